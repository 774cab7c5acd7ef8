"""Re-id datasets in Market-1501 layout: what the data is (see ``data``)."""
