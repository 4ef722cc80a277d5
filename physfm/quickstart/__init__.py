"""The quickstart: the whole pipeline on built-in data, on a CPU, with a report (``physfm
quickstart``)."""

# The stages in the order they run (``physfm quickstart --stages`` takes a comma-separated subset).
# Kept here, apart from the stage code, so that ``physfm quickstart --help`` lists them without
# importing it.
STAGE_NAMES = (
    "simulate",
    "validate",
    "shard",
    "loader bench",
    "tokenizer",
    "pretrain",
    "refine",
    "evaluate",
    "finetune",
    "probe + steer",
)
