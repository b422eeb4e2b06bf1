"""RLinf's names for this library's classes.

One module per RLinf module it stands in for (:data:`.hook.MODULES` maps them):
:mod:`.replay_buffer` (``rlinf.data.replay_buffer`` and ``rlinf.data.storage.replay.buffer``),
:mod:`.dataset` (``rlinf.data.embodied_buffer_dataset``, ``rlinf.data.storage.replay.dataset``),
:mod:`.priority_store`, :mod:`.storage_replay` (the package ``rlinf.data.storage.replay``),
:mod:`.types` (``Trajectory``) and :mod:`.ray_replay_buffer`. :mod:`.stores` holds the two classes
RLinf exposes beside its buffer, ``PriorityStore`` and ``TrajectoryCache``, written for this
library. :mod:`.hook` serves these modules under RLinf's names (docs/migration.md).

This package must stay cheap to import: the hook imports it at every interpreter start.
"""
