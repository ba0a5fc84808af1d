"""Running imgq on one machine: the command line of every process, and one supervisor that
``make run`` (``imgq-dev``) and the test fixtures both use."""
