from ucl_cli.cli import main

main()
