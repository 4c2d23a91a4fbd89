"""`python -m unigap.cli ...`: what `accelerate launch -m unigap.cli train ...` runs in each process."""

from unigap.cli import main

main()
