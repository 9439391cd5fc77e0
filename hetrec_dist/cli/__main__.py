from hetrec_dist.cli import main

main()
