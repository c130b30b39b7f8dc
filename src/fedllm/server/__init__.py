"""The server side: state, sampling, validation, optimizers, the round."""
