"""Custom Keras layers of the upstream model."""
