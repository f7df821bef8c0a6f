"""`python -m loraft` and `accelerate launch -m loraft ...`."""

from loraft.entry import main

main()
