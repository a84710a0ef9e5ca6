"""``python -m hazematching ...`` is the ``hazematching`` command, so that ``accelerate launch -m
hazematching predict ...`` runs prediction on several processes, GPUs and nodes."""

from hazematching.cli import main

main()
