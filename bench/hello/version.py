GREETING = "Hello, bench"
