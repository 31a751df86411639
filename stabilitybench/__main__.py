from stabilitybench.cli import main

main()
