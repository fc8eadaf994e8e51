from cloudclient.cli import main

main()
