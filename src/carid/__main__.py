from carid.cli import main

main()
