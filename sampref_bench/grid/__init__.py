"""The benchmark grid runner behind ``sampref_benchmark``: grid expansion and ordering (:mod:`.plan`), one lock per
run (:mod:`.locks`), one run's call, outcome and epoch lines (:mod:`.runs`), the executors (:mod:`.executors`) and
the scheduler (:mod:`.scheduler`)."""
