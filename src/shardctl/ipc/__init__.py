"""ZeroMQ channels and their wire formats; the only package that imports zmq."""
