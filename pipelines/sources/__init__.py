"""Data sources that write the LFM4Ads tf.Example schema."""
