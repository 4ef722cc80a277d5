"""What every stage shares and nothing else: errors, run.json, and the checkpoint/export file
formats.

The bottom of physfm's import order: modules here import no other physfm subpackage."""
