"""Sans-I/O pieces shared by every backend: owners, waiter cells, the fair weighted queue rule, the
wait-for graph used for deadlock detection, and the reaper that finishes releases which cannot run where
they were triggered (finalizers, dying threads)."""
