"""The benchmark grid runner behind ``sampref_benchmark``: grid expansion and ordering (:mod:`.plan`), one lock per
run (:mod:`.locks`) and the executors with the scheduler (:mod:`.executors`)."""
