"""The HTTP API: a Flask app factory, blueprints and marshmallow schemas; no TensorFlow."""
