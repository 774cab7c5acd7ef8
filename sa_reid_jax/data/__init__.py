"""How the data is fed: tf.data pipelines, samplers, augmentation, on device."""
