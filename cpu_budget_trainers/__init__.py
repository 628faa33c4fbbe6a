"""The CPU budgets of nnunet-mim's trainers (``_T_CPUdemo``, ``_T_CPUbench``, ``_CPUxlong``, ...): the
built-in demo's, the tests' and the CPU benchmarks', kept out of the trainers users scan
(``trainers/``). ``nnunet-mim demo`` and ``nnunet-mim benchmark`` add this folder to nnU-Net's
``nnUNet_extTrainer`` themselves; ``eval "$(nnunet-mim env --cpu-budgets)"`` adds it to a shell, to
run or predict with one of them by hand (the commands of docs/experiments/).
"""
