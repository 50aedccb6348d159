"""Teacher-generated datasets: a task with checkable answers, generators, verifiers and critics,
the data source that trains on what a generator kept, and exact-match accuracy.

A generator node (``lm_generator``, :class:`dgraph.declare.Generates`) runs at the start of each
stage whose ``generate`` lists it: it decodes several outputs per prompt with a model of the
graph (the teacher: sequence-level KD; the student itself: self-imitation), scores them with
verifier/critic nodes (:class:`dgraph.declare.Scores`), keeps or weights them and writes
``<run>/generated/<node>/<stage>.jsonl``; ``generated_pairs`` data nodes train on the newest.
Critics include a reward model (``reward_model``: a saved sequence classifier, or an
``hf_sequence_classifier`` node trained in the run, e.g. on ``arithmetic_judgements``).
Each public module here declares components (imported when a spec names one, see
:mod:`dgraph.components`).
"""

__all__: list[str] = []
