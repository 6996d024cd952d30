"""``python -m medvision``: the medvision command without the console script."""

from medvision.cli import main

main()
