"""`main.py sweep`: a grid of ordinary `fit` + `test` runs, each under a name that encodes its point, spread over
the machine's GPUs, several at once on one GPU. Finished points are skipped and interrupted ones resumed."""
