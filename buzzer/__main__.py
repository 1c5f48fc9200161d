from buzzer.cli import main

main()
