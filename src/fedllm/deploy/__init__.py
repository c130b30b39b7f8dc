"""Running a configuration on Flower: the apps' contents and a loopback deployment."""
