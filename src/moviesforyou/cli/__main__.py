from moviesforyou.cli import main

main()
