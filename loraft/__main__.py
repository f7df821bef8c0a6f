"""`python -m loraft` and `accelerate launch -m loraft ...`."""

from loraft.cli import main

main()
