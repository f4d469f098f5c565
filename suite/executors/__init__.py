"""Executors of a sweep: ``ray`` (every cell a Ray task) and ``guard`` (a process that dies
with its parent, for the tracking server a sweep starts)."""
