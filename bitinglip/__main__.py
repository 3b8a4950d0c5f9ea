"""`python -m bitinglip` is the `bitinglip` command."""

from bitinglip.cli import main

main()
