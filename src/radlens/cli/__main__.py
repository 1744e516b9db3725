from radlens.cli import main

main()
