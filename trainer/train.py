"""Train HazeMatching: ``accelerate launch [--config_file accelerate_configs/...] trainer/train.py --help``.

The loop lives in ``hazematching.training`` (also ``accelerate launch -m hazematching.training``)."""

from hazematching.training import main

if __name__ == "__main__":
    main()
