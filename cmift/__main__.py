from cmift.cli import main

main()
