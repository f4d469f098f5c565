"""The task catalogue: the paper's synthetic tasks, byte-level language modelling and needle
retrieval, behind one registry.

```python
import tasks
task = tasks.get("flip_flop:p_write=0.8")   # a frozen task: its fields are the spec parameters
rng = task.rng(seed=0, split="train")
batch = task.sample(rng, length=64, batch_size=32)
task.decode(batch, 0)                       # {"ops": [...], "target": 1}
```

A task is a frozen dataclass subclassing :class:`tasks.Task`, registered with
``@tasks.register("name")``. Every module of this package is imported here, so a built-in task
is one file that registers itself; a third-party task arrives through
``load_plugin(FILE_OR_MODULE)`` or the entry-point group ``suite.tasks``.
"""

from attentions.registry import import_modules
from attentions.spec import SpecError

from .api import REGISTRY, get, load_plugin, names, register, show
from .base import IGNORE, Batch, Specials, Task
from .metrics import Meter

import_modules(__name__, __path__)  # the built-in tasks register themselves on import

__all__ = [
    "IGNORE",
    "Batch",
    "Meter",
    "REGISTRY",
    "SpecError",
    "Specials",
    "Task",
    "get",
    "load_plugin",
    "names",
    "register",
    "show",
]
