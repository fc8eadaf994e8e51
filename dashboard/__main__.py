from dashboard.server import main

main()
