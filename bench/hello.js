// The seed's Node.js server (shared/seed.md), unchanged but for the port,
// which `make bench` passes in PORT.
const http = require('http');

const hostname = '127.0.0.1';
const port = Number(process.env.PORT || 3000);

const server = http.createServer((req, res) => {
  res.statusCode = 200;
  res.setHeader('Content-Type', 'text/plain');
  res.end('Hello World\n');
});

server.listen(port, hostname, () => {
  console.log(`Server running at http://${hostname}:${port}/`);
});
