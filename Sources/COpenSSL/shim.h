#ifndef VMFACTORY_COPENSSL_SHIM_H
#define VMFACTORY_COPENSSL_SHIM_H
// SHA-256 from the system's libcrypto (OpenSSL 3 on Debian 12), through the EVP interface.
#include <openssl/evp.h>
#endif
