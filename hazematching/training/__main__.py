from hazematching.training.trainer import main

main()
