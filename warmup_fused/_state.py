"""``optimizer.state`` of the fused optimizers: torch's ``defaultdict`` of per-param dicts, whose edits reach the
next step.

The step caches its op's argument lists (the state tensors among them), so every edit of ``opt.state`` (a state
tensor replaced, a param's state deleted, ``opt.state.clear()``) marks them stale, and the next step uses what
``opt.state`` holds, as torch's optimizers do. Adam's ``state[p]['step']`` is the param's float32 step counter on
its device, which a captured CUDA graph holds: a number or tensor written there is copied into it, in place.
Both pickle and deep-copy as torch's plain containers; the optimizer re-wraps them when it is restored.
"""
from __future__ import annotations

import weakref
from collections import defaultdict


class ParamState(dict):
    """``optimizer.state[p]``."""

    __slots__ = ("_owner", "_param")

    def __init__(self, owner, param, data=()):
        super().__init__(data)
        self._owner, self._param = owner, param

    def _hooked(self):
        owner = self._owner()
        return owner if owner is not None and owner._ready else None

    def __setitem__(self, key, value):
        owner = self._hooked()
        if owner is not None:
            value = owner._on_state_write(self, self._param, key, value)
        dict.__setitem__(self, key, value)

    def _removing(self, key):
        owner = self._hooked()
        if owner is not None:
            owner._on_state_delete(self, key)
        elif self._owner() is not None:
            self._owner()._structure += 1

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):
        self.update(other)
        return self

    def __delitem__(self, key):
        if key in self:
            self._removing(key)
        dict.__delitem__(self, key)

    def pop(self, key, *default):
        if key in self:
            self._removing(key)
        return dict.pop(self, key, *default)

    def popitem(self):
        if self:
            self._removing(next(reversed(self.keys())))
        return dict.popitem(self)

    def clear(self):  # the param starts over, as a new one
        dict.clear(self)
        if self._owner() is not None:
            self._owner()._structure += 1

    def __reduce__(self):
        return dict, (dict(self),)


class StateDict(defaultdict):
    """``optimizer.state``: param -> ParamState."""

    def __init__(self, owner, data=()):
        super().__init__(dict)
        self._owner = weakref.ref(owner)
        for param, state in dict(data).items():
            dict.__setitem__(self, param, self._wrap(param, state))

    def _wrap(self, param, state) -> ParamState:
        if not isinstance(state, dict):
            raise TypeError(f"optimizer.state[p] must be a dict, got {type(state).__name__}")
        wrapped = ParamState(self._owner, param)
        for key in sorted(state, key=lambda k: k != "step"):  # the step count first: the states' checks read it
            wrapped[key] = state[key]
        return wrapped

    def _edited(self):
        owner = self._owner()
        if owner is not None:
            owner._structure += 1

    def __missing__(self, param):
        state = ParamState(self._owner, param)
        dict.__setitem__(self, param, state)
        return state

    def __setitem__(self, param, state):
        dict.__setitem__(self, param, self._wrap(param, state))
        self._edited()

    def __delitem__(self, param):
        dict.__delitem__(self, param)
        self._edited()

    def pop(self, param, *default):
        value = dict.pop(self, param, *default)
        self._edited()
        return value

    def popitem(self):
        item = dict.popitem(self)
        self._edited()
        return item

    def clear(self):
        dict.clear(self)
        self._edited()

    def update(self, *args, **kwargs):
        for param, state in dict(*args, **kwargs).items():
            self[param] = state

    def setdefault(self, param, default=None):
        if param not in self:
            self[param] = {} if default is None else default
        return self[param]

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        return defaultdict, (dict,), None, None, iter([(p, dict(s)) for p, s in self.items()])

    def __copy__(self):
        return defaultdict(dict, {p: dict(s) for p, s in self.items()})
