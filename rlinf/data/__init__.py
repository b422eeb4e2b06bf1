"""Data structures for embodied RL training (see :mod:`rlinf.data.replay_buffer`)."""
