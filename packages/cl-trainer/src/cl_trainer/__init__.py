"""The continual curriculum on veRL."""
