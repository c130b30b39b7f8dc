"""Round protocols: ordered phases of messages, run by one driver on any engine."""
