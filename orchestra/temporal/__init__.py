"""Sessions as Temporal workflows (issue 15): needs the ``temporal`` extra (``temporalio``)."""
