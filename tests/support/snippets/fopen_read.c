/* Reads a file with fopen (and freopen) and prints it: the redirect must cover stdio too.
 * Usage: fopen_read PATH */
#include <stdio.h>

int main(int argc, char **argv)
{
    if (argc != 2) return 2;
    char buf[4096];
    FILE *f = fopen(argv[1], "r");
    if (!f) return 1;
    size_t n = fread(buf, 1, sizeof buf, f);
    fwrite(buf, 1, n, stdout);
    f = freopen(argv[1], "r", f);
    if (!f) return 1;
    n = fread(buf, 1, sizeof buf, f);
    fwrite(buf, 1, n, stdout);
    fclose(f);
    return 0;
}
