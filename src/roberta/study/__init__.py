"""Studies of the recipe: ablations, their reports, and `roberta plan`. Only the CLI imports these."""
