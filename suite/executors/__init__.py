"""Executors of a sweep: ``local`` (the cells one after another in this process, or on worker
processes, ``pool``) and ``ray`` (every cell a Ray task), both driven by one loop (``loop``: skip
the finished cells, claim, wait for cells another process holds, collect the outcomes), with
what they share: ``plugins`` (what a worker imports), ``server`` (an ``mlflow server`` in front
of a database store) and ``guard`` (a process that dies with its parent)."""
