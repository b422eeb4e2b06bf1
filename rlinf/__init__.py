"""RLinf-compatible data tools: the trajectory replay buffer lives in :mod:`rlinf.data`."""
