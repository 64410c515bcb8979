from panelsrv.cli import main

main()
