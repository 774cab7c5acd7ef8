"""Tools on a trained model: pictures, search, export, descriptor caches."""
