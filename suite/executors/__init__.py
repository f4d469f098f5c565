"""Executors of a sweep: ``local`` (the cells one after another in this process) and ``ray``
(every cell a Ray task), with what they share: ``server`` (an ``mlflow server`` in front of a
database store) and ``guard`` (a process that dies with its parent)."""
