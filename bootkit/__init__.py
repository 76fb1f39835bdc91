"""bootkit: what the scripts (train_toy.py, train_sd.py, teachers/, bench/) share; boot.py is the algorithm itself.

- runtime: the run (checkpoints, exact resume, signals, torchrun, one-line errors)
- metrics: how fidelity is measured (RMSE, effective NFE, energy distance, FD in a judge's features)
- exact: exact teachers of known distributions, for tests and benchmarks
- pixel: a diffusers pixel teacher and the student that starts as its copy
- toy: train_toy.py's recipe (its flags, their defaults per teacher kind, the training loop)
- evaluation: train_toy.py's figures (the student's one call against the teacher's DDIM-k, the error map)
- kd: the knowledge-distillation baseline, and what the races at equal seconds share (bench/race.py)
- sd: a Stable-Diffusion-layout teacher and its student (train_sd.py's pieces)
- card: what a train_sd.py run hands over (scheduler config, snippet, model card)
- digits: the MNIST digits of the learned teachers, their split and prompts
- judging: digit teachers judged (prompted-digit accuracy, FD), teacher and student in one loop
- pictures: labelled PNGs that people can read
"""
