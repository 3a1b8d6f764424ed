"""Framework-free references every backend is tested against: the loss-scale state machine and the lr schedule."""
